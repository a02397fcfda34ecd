-- A CDC user for a MySQL source (run once by the mysql image).
CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc';
GRANT SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc'@'%';
CREATE TABLE shop.orders (
    id bigint PRIMARY KEY,
    customer_id bigint,
    status varchar(20) NOT NULL DEFAULT 'new',
    amount decimal(12, 2),
    created_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP
);
