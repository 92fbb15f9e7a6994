"""Where and how code runs: device and precision, torchrun, what this host computes fastest, disk writes."""
