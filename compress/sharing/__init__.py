"""Weight sharing: many weights hold one value of a small palette (kmeans.py)."""
