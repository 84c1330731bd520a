"""The segmentation network f: U-Net, uncertainty methods, sampling engine, running f over cases."""
