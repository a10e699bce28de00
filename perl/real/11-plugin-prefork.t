# The plugin inside a real openQA web UI run as `openqa prefork` with three workers: each event reaches one of them.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest::Scenarios qw(plugin_suite);

plugin_suite(workers => 3, base => 11000);
done_testing;
