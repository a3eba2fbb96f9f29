"""The infer floor: a trained model in use. network.py is the core every verb shares (a model
file on a device in a precision, preprocessing, masks at any size); above it the Python API
(api.py), evaluate, predict on images and videos. It never imports camseg.train."""
