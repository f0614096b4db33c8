"""synthmed.data"""
