"""Using a trained model: load it, pack it, export it.

    trained.py       ``minibnn.load(path)``: a trained model from a run or packed file
    inference.py     bit-packed (XNOR-popcount) inference of a run file's model
    packed_file.py   packed files: binary weights as bits, 32x smaller
    onnx_export.py   the model as an ONNX graph (opset 17) for onnxruntime
"""
