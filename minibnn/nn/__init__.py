"""Neural-network layers: functional forward/backward pairs and Module wrappers."""
