-- The shop database of the example pipelines.yaml (run once by the postgres image).
CREATE TABLE public.customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE public.orders (
    id bigint PRIMARY KEY,
    customer_id bigint REFERENCES public.customers (id),
    status varchar(20) NOT NULL DEFAULT 'new',
    amount numeric(12, 2),
    created_at timestamp NOT NULL DEFAULT now()
);
