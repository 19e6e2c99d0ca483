"""`effens audit`: label issues, duplicates, odd images and shortcuts in a data set."""
