"""P6 (beyond the paper): regularisers that cut the solver's work, each against none."""
