package IGTest::AMQP;
# Just enough AMQP 0-9-1 to watch what the library publishes: login, declare the exchange and an
# exclusive server-named queue, bind it, and poll it with basic.get. Pure Perl (Debian 12 ships no
# installed Perl AMQP client by default), blocking, with a deadline on every read.
use v5.20;
use warnings;
use feature 'signatures';
no warnings 'experimental::signatures';

use IO::Socket::INET;
use IO::Select;
use Mojo::URL;
use Mojo::Util 'url_unescape';
use Time::HiRes qw(time sleep);

sub new ($class, $url = $ENV{AMQP_URL} // 'amqp://guest:guest@127.0.0.1:5672/%2f') {
    my $u = Mojo::URL->new($url);
    my ($user, $pass) = map { url_unescape($_ // 'guest') } split /:/, ($u->userinfo // 'guest:guest'), 2;
    my $vhost = url_unescape(($u->path->to_string =~ s{^/}{}r)) || '/';
    my ($host, $port) = ($u->host // '127.0.0.1', $u->port // 5672);
    my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Timeout => 5)
      or die "cannot connect to AMQP at " . ($u->host // '') . ": $!\n";
    my $self = bless {sock => $sock, buf => ''}, $class;
    syswrite $sock, "AMQP\x00\x00\x09\x01";
    $self->_expect(0, 10, 10);    # connection.start
    $self->_method(0, 10, 11, pack('N', 0) . _s('PLAIN') . _l("\0$user\0$pass") . _s('en_US'));
    my $tune = $self->_expect(0, 10, 30);
    my ($channel_max, $frame_max) = unpack 'nN', $tune;
    $self->_method(0, 10, 31, pack('nNn', $channel_max, $frame_max, 0));    # no heartbeats
    $self->_method(0, 10, 40, _s($vhost) . _s('') . "\0");
    $self->_expect(0, 10, 41);
    $self->_method(1, 20, 10, _s(''));
    $self->_expect(1, 20, 11);
    return $self;
}

sub _s ($str) { pack('C', length $str) . $str }    # shortstr
sub _l ($str) { pack('N', length $str) . $str }    # longstr

sub _frame ($self, $type, $channel, $payload) {
    syswrite $self->{sock}, pack('CnN', $type, $channel, length $payload) . $payload . "\xCE";
}
sub _method ($self, $channel, $class, $method, $args) { $self->_frame(1, $channel, pack('nn', $class, $method) . $args) }

# The next frame: ($type, $channel, $payload); dies after $timeout seconds.
sub _read_frame ($self, $timeout = 10) {
    my $deadline = time + $timeout;
    while (1) {
        if (length $self->{buf} >= 7) {
            my ($type, $channel, $size) = unpack 'CnN', $self->{buf};
            if (length $self->{buf} >= 8 + $size) {
                my $payload = substr $self->{buf}, 7, $size;
                substr $self->{buf}, 0, 8 + $size, '';
                return ($type, $channel, $payload);
            }
        }
        my $left = $deadline - time;
        die "AMQP: no frame within ${timeout}s\n" if $left <= 0 || !IO::Select->new($self->{sock})->can_read($left);
        sysread($self->{sock}, $self->{buf}, 65536, length $self->{buf}) or die "AMQP: connection closed\n";
    }
}

# Reads one method frame, dies on a close from the broker or another method; answers its args.
sub _expect ($self, $channel, $class, @methods) {
    my ($type, $ch, $payload) = $self->_read_frame;
    die "AMQP: expected a method frame, got type $type\n" unless $type == 1;
    my ($c, $m) = unpack 'nn', $payload;
    my $args = substr $payload, 4;
    if (($c == 10 || $c == 20) && $m == 40) {
        my ($code, $len) = unpack 'nC', $args;
        my $what = $c == 10 ? 'connection' : 'channel';
        die "AMQP: broker closed the $what: $code " . substr($args, 3, $len) . "\n";
    }
    die "AMQP: expected $class.@methods, got $c.$m\n" unless $c == $class && grep { $_ == $m } @methods;
    return wantarray ? ($m, $args) : $args;
}

# A topic exchange of the test's own that the broker deletes once the test's queue is gone (also
# when the test dies): tests leave nothing behind on the shared broker.
sub declare_exchange ($self, $name) {
    $self->_method(1, 40, 10, pack('n', 0) . _s($name) . _s('topic') . pack('C', 0b100) . pack('N', 0));
    $self->_expect(1, 40, 11);
}

# Tests share the broker: what they declared is deleted again.
sub delete_exchange ($self, $name) {
    $self->_method(1, 40, 20, pack('n', 0) . _s($name) . "\0");
    $self->_expect(1, 40, 21);
}

sub delete_queue ($self, $name) {
    $self->_method(1, 50, 40, pack('n', 0) . _s($name) . "\0");
    $self->_expect(1, 50, 41);
}

# An exclusive, server-named queue bound to $exchange with $key; answers the queue name.
sub bind_queue ($self, $exchange, $key) {
    $self->_method(1, 50, 10, pack('n', 0) . _s('') . pack('C', 0b0100) . pack('N', 0));
    my $args = $self->_expect(1, 50, 11);
    my $queue = substr $args, 1, unpack('C', $args);
    $self->_method(1, 50, 20, pack('n', 0) . _s($queue) . _s($exchange) . _s($key) . "\0" . pack('N', 0));
    $self->_expect(1, 50, 21);
    return $self->{queue} = $queue;
}

sub publish ($self, $exchange, $key, $body, $content_type = 'application/json') {
    $self->_method(1, 60, 40, pack('n', 0) . _s($exchange) . _s($key) . "\0");
    $self->_frame(2, 1, pack('nnNNn', 60, 0, 0, length $body, 1 << 15) . _s($content_type));
    $self->_frame(3, 1, $body);
}

# The next message on the bound queue within $timeout seconds, or undef:
# {routing_key, exchange, body, content_type, delivery_mode, message_id}.
# $interval: seconds between polls (the benchmark polls without pause).
sub get ($self, $timeout = 10, $interval = 0.1) {
    my $deadline = time + $timeout;
    while (1) {
        $self->_method(1, 60, 70, pack('n', 0) . _s($self->{queue}) . "\1");    # no-ack
        my ($m, $args) = $self->_expect(1, 60, 71, 72);
        return $self->_content($args) if $m == 71;
        return undef if time >= $deadline;
        sleep $interval if $interval;
    }
}

# Drains messages for $timeout seconds: a list of them.
sub get_all ($self, $timeout) {
    my $deadline = time + $timeout;
    my @all;
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0;
        my $msg = $self->get($left) or last;
        push @all, $msg;
    }
    return @all;
}

sub _content ($self, $args) {
    my $pos = 9;    # delivery-tag, redelivered
    my %msg;
    for my $field (qw(exchange routing_key)) {
        my $len = unpack 'C', substr $args, $pos;
        $msg{$field} = substr $args, $pos + 1, $len;
        $pos += 1 + $len;
    }
    my (undef, undef, $header) = $self->_read_frame;
    my ($hi, $lo, $flags) = unpack 'x4NNn', $header;
    my $size = $hi * 2**32 + $lo;
    $pos = 14;
    my %prop = (15 => 'content_type', 14 => 'content_encoding', 10 => 'correlation_id', 9 => 'reply_to',
        8 => 'expiration', 7 => 'message_id', 5 => 'type', 4 => 'user_id', 3 => 'app_id');
    for my $bit (reverse 2 .. 15) {
        next unless $flags & (1 << $bit);
        if ($prop{$bit}) {
            my $len = unpack 'C', substr $header, $pos;
            $msg{$prop{$bit}} = substr $header, $pos + 1, $len;
            $pos += 1 + $len;
        }
        elsif ($bit == 13) { $pos += 4 + unpack 'N', substr $header, $pos }    # headers table
        elsif ($bit == 12) { $msg{delivery_mode} = unpack 'C', substr $header, $pos; $pos += 1 }
        elsif ($bit == 11) { $pos += 1 }    # priority
        elsif ($bit == 6) { $pos += 8 }    # timestamp
    }
    $msg{body} = '';
    while (length $msg{body} < $size) {
        my (undef, undef, $chunk) = $self->_read_frame;
        $msg{body} .= $chunk;
    }
    return \%msg;
}

sub DESTROY ($self) { close $self->{sock} if $self->{sock} }

1;
