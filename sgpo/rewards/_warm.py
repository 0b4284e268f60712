"""Imported only by the fork server the grader's workers are forked from (its preload list):
math-verify is imported and warmed up once there, so every worker, including each one that
replaces a worker killed at its deadline, starts warm in milliseconds."""

from sgpo.rewards.symbolic import math_verify

math_verify()
