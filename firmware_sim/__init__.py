"""Stand-ins for the hardware: node controllers, camera, signs, drivers."""
