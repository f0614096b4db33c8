"""synthmed.report"""
