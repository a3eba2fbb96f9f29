"""The model floor: the network (a fastai U-Net on a torchvision ResNet) and the files a trained
one lives in (model.pth, checkpoints' weights, model.onnx's contract)."""
