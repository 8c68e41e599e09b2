"""birdray: CUB-200-2011 bird species classification on Ray, from raw data to an explained API."""

__version__ = "0.1.0"
