"""Weight averaging (WARM), ensembles (ENS / WCO / UWO) and the analyses that compare them."""
