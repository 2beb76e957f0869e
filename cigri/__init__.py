"""CiGri: a lightweight grid middleware for bags of tasks on OAR clusters."""

__version__ = "4.0.0"
