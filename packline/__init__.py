"""packline"""
