"""Lab (control): builds a fabric from a topology (YAML -> model -> networkx -> switches and
ports), runs guests on it, draws it, and the seed's demo.
"""
