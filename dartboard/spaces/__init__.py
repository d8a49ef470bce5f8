"""What can be searched: ops, genotypes, cells, networks, named spaces (torch only)."""
