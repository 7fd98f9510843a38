"""Figures: 2D scatter and density plots (`points`), image grids and progress recordings (`images`)."""
