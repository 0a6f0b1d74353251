"""What the bridge, the gateway and the image engine share; it imports none of the three packages."""
