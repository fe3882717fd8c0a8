"""hemaedge.benchmarks"""
