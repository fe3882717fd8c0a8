"""hemaedge.export"""
