"""synthmed.generators"""
