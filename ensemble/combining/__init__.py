"""How member probabilities become one answer: strategies, votes, `auto`, the pool, decisions."""
