"""Search: index extraction on write (extract.py) and SQL query building on read (query.py)."""
