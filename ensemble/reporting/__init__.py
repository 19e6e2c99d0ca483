"""What a run tells: metrics.json, report.md, index.html and its pictures, the run card."""
