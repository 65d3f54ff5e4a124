"""The service layer: all reads and writes of the app, with the permission checks; routes stay thin."""
