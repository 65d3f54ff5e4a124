"""Deep RL from human preferences for control tasks (issue #16; Christiano et al. 2017, arXiv:1706.03741).

A policy acts in a MuJoCo environment; short clips of its behaviour are compared by people (or a synthetic
oracle); an ensemble of reward predictors is fitted to the comparisons; PPO optimises the predicted reward.
``segments`` cuts episodes into clips, ``oracle`` is the synthetic labeler, ``predictor`` the reward ensemble,
``queries`` which pairs to ask about and when; the loop, the environments and the clip pages build on them.
"""
