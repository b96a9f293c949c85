"""All fixed points of maps f: R^N -> R^N (P5): search, de-duplication, stability,
basins, certified counts, Jacobian spectra, training and restoration."""
