"""Training: the trainer (setup, step, loop) and the components it calls, each deciding its own timing.

    trainer     `partial-fc train`: one worker of a run, top to bottom (setup, one step, the loop)
    startup     the trainer's start-up pieces and the checks that stop a run before its first step
    periodic    verification and checkpoint saving, each deciding at which steps it runs
    schedule    the learning rate as a pure function of the step
    loss_scale  dynamic loss scaling for the fp16 trunk
    report      what rank 0 logs: lines, progress bar, metrics.jsonl, TensorBoard
    watchdog    ends a rank whose peers have died or hung
    demo        `partial-fc demo`: the head alone on synthetic embeddings
"""
