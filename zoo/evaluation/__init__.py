"""Evaluation: metrics, rate–distortion runs over image folders, classical codecs, BD-rate and plots."""
