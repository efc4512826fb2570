"""The equivalence suite of THEORY.md: properties P1-P10, exact and float, as a report."""
