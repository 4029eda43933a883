"""Data: RecordIO datasets, the rank-sharded loader, and the tools that make and convert datasets.

    records   RecordIO (train.rec + train.idx) reading and writing, insightface and im2rec layouts
    loader    the dataset and its iterator sharded by rank; random images for smoke runs and benchmarks
    bins      verification `.bin` pair sets: the safe loader and decoding
    synth     `partial-fc synth`: a small learnable synthetic face dataset
    pack      `partial-fc pack`: image folders or a .lst -> train.rec/.idx/property
    unpack    `partial-fc unpack`: train.rec/.idx -> image folders
    make_bin  `partial-fc make-bin`: a pairs list + images -> a verification .bin
"""
