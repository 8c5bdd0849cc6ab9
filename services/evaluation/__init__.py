"""The evaluation room: graders (one small module per OpenAI-shaped grader type) and the eval
loop that samples a model on an eval set's items and scores each answer.

It imports only ``services.common`` and third-party libraries (metric libraries, numpy, the
openai client): never torch/transformers, never the registry, trainer or gateway. The trainer's
eval worker drives it; the sampler that runs a model in process lives in the trainer's recipes.
"""
