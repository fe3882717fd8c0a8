"""hemaedge.train"""
