-- The ledger lives in its own database beside Temporal's; `nicflow db upgrade` creates its tables.
CREATE DATABASE nicflow OWNER temporal;
