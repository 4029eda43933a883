"""Evaluation: the verification protocol and the commands that measure or export a trained model.

    protocol  10-fold verification accuracy, TAR at FAR, and the Verifier that embeds pair sets
    models    loading a trainer checkpoint or a plain MXNet model (one place for verify, ijb and export)
    verify    `partial-fc verify`
    ijb       `partial-fc ijb`: IJB-B / IJB-C template verification
    export    `partial-fc export`: ONNX, checked against MXNet
    plot      `partial-fc plot`: a run's curves from metrics.jsonl
"""
