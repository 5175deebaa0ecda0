"""Assets: what each site may report for, and the physical bounds of each asset kind."""
