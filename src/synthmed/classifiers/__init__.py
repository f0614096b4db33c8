"""synthmed.classifiers"""
