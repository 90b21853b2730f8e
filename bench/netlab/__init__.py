"""A namespace lab for benchmarks: hosts on a private bridge with capped egress (see `lab.py`)."""
