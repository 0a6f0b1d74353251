"""What the bridge, the gateway and the image service share, depending on none of them."""
