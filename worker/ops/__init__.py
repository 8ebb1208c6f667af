"""The ops surface: the command line, doctor, stats, dead letters and the demonstration."""
