"""The outbox: the Postgres table every batch waits in, its states and their compare-and-set
transitions (write side ``enqueue``, delivery side ``delivery``) and the receipt a POST carries.
The lowest layer of the sync: it knows the table and MoEngage's packing, nothing of the path."""
