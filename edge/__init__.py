"""hemaedge.edge"""
