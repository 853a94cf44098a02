DROP TABLE point_ledger;
DROP TABLE point_accounts;
