"""synthmed.synthetic"""
