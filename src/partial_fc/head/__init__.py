"""The Partial FC head: the classes split over the ranks, a sampled subset of each shard per step, and the
margin softmax over all of them (docs/design.md §3 steps 1 and 3 to 8).

    sharding     which contiguous class range each rank owns
    sampler      the centers a rank uses in a step: every positive, plus uniformly drawn negatives
    margin       ArcFace / CosFace / combined target logits and their exact gradient
    softmax      the local pieces of the distributed softmax cross-entropy
    operator     PartialFC: the step as named stages, with the collectives placed between them
    memory_bank  each rank's centers and momentum, updated only where sampled
    precision    storage dtypes of the bank (float32, float16, bfloat16)
    memory_plan  what one rank holds, and the row chunks the operator works in
    native/      the in-place sampled-row update (an MXNet custom operator) and malloc_trim

sharding, sampler, margin, softmax and precision are pure math: they never communicate (the operator
receives a communicator and is the only place its collectives are called).
"""
