"""Demo tasks shipped with tuneplex (data generators and evaluators for `make demo`)."""
