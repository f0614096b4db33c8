"""synthmed.pipeline"""
