"""robustbench_bivol: how robust are dynamic convolution operators to common image corruptions?"""
__version__ = "0.1.0"
