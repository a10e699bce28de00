# `store_url = openqa`: openQA's own database connection as the store's PostgreSQL URL.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../lib";
use OpenQA::WebAPI::Plugin::IncidentGate;

my $url = \&OpenQA::WebAPI::Plugin::IncidentGate::store_url_from_dsn;
is $url->('DBI:Pg:dbname=openqa'), 'postgresql://%2Fvar%2Frun%2Fpostgresql/openqa',
  "Debian's database.ini: the local socket";
is $url->('dbi:Pg:dbname=openqa;host=db.example;port=5433', 'geekotest', 'p@ss:w/rd'),
  'postgresql://geekotest:p%40ss%3Aw%2Frd@db.example:5433/openqa', 'user, password, host and port';
is $url->('DBI:Pg:dbname=openqa_test;host=/dev/shm/tpg;sslmode=require'),
  'postgresql://%2Fdev%2Fshm%2Ftpg/openqa_test?sslmode=require', "a test database's socket, sslmode kept";
ok !eval { $url->('DBI:SQLite:dbname=x') }, 'only PostgreSQL';
like $@, qr/not PostgreSQL/, 'and says so';
done_testing;
